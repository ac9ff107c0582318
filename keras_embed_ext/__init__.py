"""keras_embed_ext: a gather-first Embedding layer for Keras 3 on every backend."""

import sys

if "keras" not in sys.modules:
    from keras_embed_ext.environment import choose_backend

    choose_backend()

from keras_embed_ext import optimizers
from keras_embed_ext.configs import FeatureConfig
from keras_embed_ext.configs import TableConfig
from keras_embed_ext.distributed import DistributedEmbedding
from keras_embed_ext.dynamic_ids import DynamicIds
from keras_embed_ext.embed_reduce import EmbedReduce
from keras_embed_ext.embedding import Embedding
from keras_embed_ext.migrate import replace_embeddings
from keras_embed_ext.migrate import replacing_embeddings
from keras_embed_ext.reversible import ReversibleEmbedding

__version__ = "0.1.0"
__all__ = ["DistributedEmbedding", "DynamicIds", "EmbedReduce", "Embedding", "FeatureConfig", "ReversibleEmbedding", "TableConfig", "optimizers",
           "replace_embeddings", "replacing_embeddings", "__version__"]
