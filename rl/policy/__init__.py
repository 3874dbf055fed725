"""The policy: build, load and save any spec, its trainable parts and the mask-token embedding rows."""
