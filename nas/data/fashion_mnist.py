"""Fashion-MNIST from its four IDX ``.gz`` files under ``<data_dir>/fashion_mnist``; never downloaded.

The files have MNIST's names and format (Xiao et al., 2017, a drop-in replacement), so the MNIST
reader and loader do the reading and checking; only the folder and the normalisation differ.
"""

from __future__ import annotations

from pathlib import Path

from nas.data.base import files_missing
from nas.data.mnist import FILES, MNIST

MEAN, STD = 0.2860, 0.3530  # of the training pixels scaled to [0, 1]
FOLDER = "fashion_mnist"


class FashionMNIST(MNIST):
    """60,000 training and 10,000 test 28x28 grey-scale images of clothing in 10 classes, normalised."""

    folder = FOLDER
    mean = MEAN
    std = STD

    def check_available(self, data_dir: Path) -> None:
        folder = Path(data_dir) / FOLDER
        missing = [name for name in FILES.values() if not (folder / name).is_file()]
        if missing:
            raise files_missing(
                "Fashion-MNIST", folder, missing, "copy the IDX files (from "
                "https://github.com/zalandoresearch/fashion-mnist) into that folder on the server, or start the "
                f"server with NAS_DATA_DIR at the folder that contains {FOLDER}/",
            )
