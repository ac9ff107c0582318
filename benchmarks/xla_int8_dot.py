"""Whether XLA's int8 x int8 product (int32 sums) is exact for every feature count.

On one H200 (jax 0.11.2) the product of 2 features gave twice the sums, so
`blocked_logits` multiplies integers on an accelerator only when the feature count is
a multiple of 4. This prints each wrong product: run it where that rule is in doubt.

    python benchmarks/xla_int8_dot.py
"""

import jax
import jax.numpy as jnp
import numpy as np


def main():
    rng = np.random.default_rng(0)
    dot = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.int32))
    wrong = []
    for features in range(1, 9):
        for rows, columns in [(2, 2), (17, 40)]:
            a = rng.integers(-127, 128, (rows, features)).astype(np.int8)
            b = rng.integers(-127, 128, (features, columns)).astype(np.int8)
            expected = a.astype(np.int64) @ b.astype(np.int64)
            for how, product in (("eager", jnp.matmul(a, b, preferred_element_type=jnp.int32)), ("jit", dot(a, b))):
                got = np.asarray(product)
                if not np.array_equal(got, expected):
                    nonzero = expected != 0
                    ratios = np.unique(np.round(got[nonzero] / expected[nonzero], 3))[:4]
                    wrong.append((features, rows, columns, how, ratios))
    print(jax.devices())
    print("wrong int8 products (features, rows, columns, how, got / expected):", len(wrong))
    for row in wrong:
        print(*row)


if __name__ == "__main__":
    main()
