"""
Saving, loading and the command line
====================================

``pickle`` and ``joblib`` store the head and its settings, never the
backbone's weights. ``save``/``load`` write safetensors and JSON that load
without unpickling anything. The command line fits and predicts from CSV
files.
"""

# %%
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from sklearn_relish import RelishRegressor
from sklearn_relish.datasets import load_vader_tweets

X, y = load_vader_tweets(return_X_y=True)
reg = RelishRegressor(random_state=0).fit(X[:500], y[:500])
workdir = Path(tempfile.mkdtemp())

reg.save(workdir / "model")
print(sorted(p.name for p in (workdir / "model").iterdir()))
loaded = RelishRegressor.load(workdir / "model")
blob = pickle.dumps(reg)
print(f"pickle: {len(blob) / 1e6:.1f} MB")
np.testing.assert_allclose(loaded.predict(X[500:600]), reg.predict(X[500:600]), atol=1e-6)
np.testing.assert_array_equal(pickle.loads(blob).predict(X[500:600]), reg.predict(X[500:600]))

# %%
# The same from a shell: ``fit`` reads a CSV and writes a model directory,
# ``predict`` writes a CSV of predictions.
pd.DataFrame({"text": X[:500], "sentiment": y[:500]}).to_csv(workdir / "train.csv", index=False)
pd.DataFrame({"text": X[500:600]}).to_csv(workdir / "test.csv", index=False)
for command in (["fit", str(workdir / "train.csv"), "--text", "text", "--target", "sentiment",
                 "--out", str(workdir / "cli-model"), "--param", "random_state=0"],
                ["predict", str(workdir / "cli-model"), str(workdir / "test.csv"),
                 "--out", str(workdir / "predictions.csv")]):
    print("$ python -m sklearn_relish", " ".join(command[:1]), "...")
    subprocess.run([sys.executable, "-m", "sklearn_relish", *command], check=True)
cli = pd.read_csv(workdir / "predictions.csv")
print(cli.head())

# %%
# The model fitted by the command line predicts as the one fitted in Python.
fig, ax = plt.subplots(figsize=(4, 4))
ax.scatter(reg.predict(X[500:600]), cli.iloc[:, -1], s=10)
ax.set(xlabel="fitted in Python", ylabel="fitted by the command line")
fig.tight_layout()
