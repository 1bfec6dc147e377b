"""What goes into the encoders: image loading and preprocessing, tokenisation, input discovery, video frames."""
