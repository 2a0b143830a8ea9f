"""umm-plugin: self-rewarding RL (GvU, SRUM, R3) for unified multimodal models, as an OpenRLHF plugin.

Layers, lowest first; a layer never imports a higher one (tests/test_layers.py checks it):
worlds (ShapesWorld) -> models (the UMM) -> rewards -> algos -> openrlhf; `cli` and `eval` sit on top.
"""

__version__ = "0.1.0"
