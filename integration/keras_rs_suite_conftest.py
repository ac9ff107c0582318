"""conftest.py of the directory where keras-rs' own `DistributedEmbedding` and
`EmbedReduce` tests run: the classes those tests read from keras-rs' modules are
keras_embed_ext's (unless KERAS_RS_SUITE_AGAINST=keras-rs, which measures keras-rs)."""

import os

if os.environ.get("KERAS_RS_SUITE_AGAINST") != "keras-rs":
    from keras_rs.src.layers.embedding import distributed_embedding
    from keras_rs.src.layers.embedding import distributed_embedding_config
    from keras_rs.src.layers.embedding import embed_reduce

    import keras_embed_ext

    distributed_embedding.DistributedEmbedding = keras_embed_ext.DistributedEmbedding
    distributed_embedding_config.FeatureConfig = keras_embed_ext.FeatureConfig
    distributed_embedding_config.TableConfig = keras_embed_ext.TableConfig
    embed_reduce.EmbedReduce = keras_embed_ext.EmbedReduce
