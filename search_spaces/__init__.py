"""Search spaces shipped with sparse-nas, registered through the ``nas.search_spaces`` entry points."""
