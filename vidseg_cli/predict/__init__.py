"""Video prediction (STReMN 4.2): Moving MNIST data; the predictor and its task head come next."""
