"""The one road for model files: read and write every format, foreign names (torchvision, timm, pycls), convert, pretrained weights, export, and program files run."""
