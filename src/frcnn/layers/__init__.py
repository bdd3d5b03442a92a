"""Kernels and fast paths under the model: NMS that stops at the top N, RoI warping, VGG's 2x2 pools,
oneDNN fc layers, mixed-precision promotion, and the switch that turns the fast paths off."""
