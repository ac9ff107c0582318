"""What `keras.ops` cannot say, or says measurably slower, one job per module: how the
call runs (`context`), where a table lives (`devices`), the backends' own gathers and
row writes (`rows`), in-place arithmetic (`arithmetic`), int4 rows (`int4`), a step's
keys sorted (`keys`), and XLA-compiled functions on TensorFlow (`fused`)."""
