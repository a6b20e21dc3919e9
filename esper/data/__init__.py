"""Data: datasets (synthetic and CIFAR-10 images, ImageFolder directories and archives, text, synthetic recall) as tensors."""
