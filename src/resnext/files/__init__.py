"""The one road for model files: read and write every format, foreign names (torchvision, timm, pycls), convert, export."""
