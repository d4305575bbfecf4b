"""Ticket methods: the weight-sharing MobileNet supernet, SuperTickets' two-in-one training and
lottery-ticket rounds, as the torch side of the ``supertickets`` and ``lottery_ticket`` strategies.

The strategies themselves live in :mod:`nas.strategies` and import nothing from here at module
import, so the API server can validate specs without torch.
"""
