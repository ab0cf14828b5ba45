"""
How the prediction moves over the refinement steps
==================================================

:meth:`~sklearn_relish.RelishRegressor.staged_predict` yields the
prediction after each refinement step; the last one is ``predict``. Early
steps read the tokens coarsely, later ones correct them.
"""

# %%
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import mean_squared_error

from sklearn_relish import RelishRegressor
from sklearn_relish.datasets import load_vader_tweets

X, y = load_vader_tweets(return_X_y=True)
X_train, y_train, X_test, y_test = X[:500], y[:500], X[500:700], y[500:700]

# The plain head (the paper's), so that every step's output is the head's own.
reg = RelishRegressor(n_iterations=4, anchor=None, early_stopping=False, cv=None,
                      random_state=0).fit(X_train, y_train)
stages = np.array(list(reg.staged_predict(X_test)))          # (steps, rows)
rmse = [mean_squared_error(y_test, s) ** 0.5 for s in stages]
print("test RMSE after each step:", np.round(rmse, 3))

# %%
fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.5))
steps = np.arange(1, len(stages) + 1)
left.plot(steps, rmse, marker="o")
left.set(xlabel="refinement step", ylabel="test RMSE", xticks=steps)
for row in range(8):
    right.plot(steps, stages[:, row], marker=".", alpha=0.8)
    right.scatter([steps[-1] + 0.25], [y_test[row]], marker="x", color="black")
right.set(xlabel="refinement step", ylabel="prediction (x: true)", xticks=steps)
fig.tight_layout()
