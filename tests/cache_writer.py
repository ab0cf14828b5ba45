"""Helper process for test_cache: fill a shared cache_dir."""

import sys

from sklearn_relish import RelishRegressor


def main(model_dir, cache_dir, seed):
    # Long enough that the two processes' encoding overlaps in time.
    texts = [f"text number {i} is good " + "and long " * 60 for i in range(150)]
    if seed:
        texts = texts[::-1]  # the other process writes in the opposite order
    RelishRegressor(backbone=model_dir, cache_dir=cache_dir, latent_dim=16, n_heads=2,
                    max_epochs=1, encode_batch_size=4).fit(texts, list(range(150)))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
