"""DASS (Mousavi et al., ACM TECS 2023): differentiable architecture search for sparse networks.

``genotype`` holds the torch-free cell descriptions and their derivation from α, ``network``
the DARTS cells built from score-masked layers, ``search`` the three-phase search procedure.
"""
