"""
Quick start: predict sentiment intensity from tweets
====================================================

Fit :class:`~sklearn_relish.RelishRegressor` on raw tweets, predict held-out
ones and compare with a ridge on the same frozen states and with the mean.
"""

# %%
# Load the data: 4,200 tweets rated from -4 (very negative) to +4 (very
# positive) by 20 or more people each, shipped with the package.
import matplotlib.pyplot as plt
import numpy as np
from scipy.stats import pearsonr
from sklearn.linear_model import RidgeCV
from sklearn.metrics import mean_squared_error
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_relish import RelishRegressor
from sklearn_relish.datasets import load_vader_tweets

X, y = load_vader_tweets(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(
    X[:700], y[:700], test_size=200, random_state=0)
print(X_train[0], "->", y_train[0])

# %%
# Fit. The first fit runs the frozen backbone once per text and caches the
# token states; only the head (about 2.5M parameters) is trained.
reg = RelishRegressor(random_state=0).fit(X_train, y_train)
pred = reg.predict(X_test)

# %%
# A ridge on the mean-pooled states of the same backbone is the baseline a
# user would otherwise fit: ``pooled_states`` reads the same cache.
ridge = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-1, 5, 13)))
ridge.fit(reg.pooled_states(X_train), y_train)
pred_ridge = ridge.predict(reg.pooled_states(X_test))

for name, p in [("RELISH", pred), ("ridge on mean-pooled states", pred_ridge),
                ("training mean", np.full_like(y_test, y_train.mean()))]:
    r = pearsonr(p, y_test)[0] if p.std() else float("nan")
    rmse = mean_squared_error(y_test, p) ** 0.5
    print(f"{name:30s} Pearson {r:.3f}  RMSE {rmse:.3f}")
print("the head's weight in the prediction:", reg.shrinkage_)

# %%
# Predicted against true: points on the diagonal are exact.
fig, ax = plt.subplots(figsize=(4.5, 4.5))
ax.scatter(y_test, pred_ridge, s=10, alpha=0.5, label="ridge")
ax.scatter(y_test, pred, s=10, alpha=0.7, label="RELISH")
ax.plot([-4, 4], [-4, 4], color="grey", lw=1)
ax.set(xlabel="true sentiment", ylabel="predicted", xlim=(-4, 4), ylim=(-4, 4))
ax.legend()
fig.tight_layout()
