"""Models: takes model entries; hands on ``nn.Module`` objects in eval mode taking images in [0, 1].

Weights are verified before they are read (``weights``); ``load`` dispatches on the entry's source;
``architectures`` and ``zoo`` build and train the digits zoo; ``robustbench`` reads RobustBench's zoo.
"""
