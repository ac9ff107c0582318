"""Host memory that TensorFlow keeps per layer and per state change (XLA keeps every
executable it compiles): MB added per `enable_lora`/`merge_lora` cycle of one layer, and
per new int8 layer called once and deleted, ours against keras' layer.

    python benchmarks/tf_compiled_memory.py
"""

import gc
import os

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_embed_ext as kee  # noqa: E402

REPEATS = 60
IDS = np.array([[1, 2, 3]], "int32")


def resident_mb():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def added_per_call(fn):
    for _ in range(5):  # warm-up: the first compiles are the ones every process pays
        fn()
    gc.collect()
    start = resident_mb()
    for _ in range(REPEATS):
        fn()
    gc.collect()
    return (resident_mb() - start) / REPEATS


def main():
    layer = kee.Embedding(100, 16)
    layer.build()

    def cycle():
        layer.enable_lora(2)
        layer(IDS)
        layer.merge_lora()
        layer(IDS)

    def new_layer(cls):
        def make():
            fresh = cls(100, 16)
            fresh.build()
            fresh.quantize("int8")
            fresh(IDS)

        return make

    print(f"MB per enable_lora/merge_lora cycle (ours): {added_per_call(cycle):.3f}")
    for name, cls in (("ours", kee.Embedding), ("keras", keras.layers.Embedding)):
        print(f"MB per new int8 layer called once ({name}): {added_per_call(new_layer(cls)):.3f}")


if __name__ == "__main__":
    main()
