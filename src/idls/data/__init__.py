"""Data: the embedded synthetic set and loaders for real image folders / CSV lists / torchvision sets."""
