"""The paper's model in plain PyTorch: anchors, box coding, sampling, RPN, Fast R-CNN head, backbones, and
the factory that builds them from config values."""
