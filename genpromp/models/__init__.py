"""Model loading (diffusers layout) and diffusers pipeline folders."""
