"""rfpipe inside other packages: `inference_models` makes inference-models' RF-DETR models preprocess
through rfpipe."""
