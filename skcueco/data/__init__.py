"""Input handling: validation, image sources and decoding, preprocessing, loaders.

Data flows one way: array-likes and image sources are validated into compact
2-D rows plus an :class:`~skcueco.data.validation.InputSpec`; loaders gather
rows a batch at a time; :class:`~skcueco.data.preprocess.Preprocess` turns
them into float model input on the device.
"""
