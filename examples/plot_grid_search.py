"""
Grid search over the refinement steps and the latent size
=========================================================

``GridSearchCV`` clones the regressor for every fold and grid point. The
backbone still runs once per distinct text: every clone reads the token
states the first fit cached, so a search costs head fits only.
"""

# %%
import matplotlib.pyplot as plt
import pandas as pd
from sklearn.model_selection import GridSearchCV

from sklearn_relish import RelishRegressor, cache_info
from sklearn_relish.datasets import load_vader_tweets

X, y = load_vader_tweets(return_X_y=True)
X, y = X[:500], y[:500]

# Four settings x 3 folds: 12 head fits and the refit, one backbone pass.
# cv=None: one head fit each (below 2,000 rows the default cross-fits every
# fit's head over five folds: six head fits, for the gate's sake).
search = GridSearchCV(
    RelishRegressor(max_epochs=4, cv=None, random_state=0),
    {"n_iterations": [1, 3], "latent_dim": [64, 256]},
    cv=3, scoring="r2",
).fit(X, y)
print("best:", search.best_params_, f"R² {search.best_score_:.3f}")
print(cache_info())

# %%
# Mean cross-validated R² per setting, with one standard deviation over folds.
results = pd.DataFrame(search.cv_results_)
fig, ax = plt.subplots(figsize=(5, 3.5))
for latent, group in results.groupby("param_latent_dim"):
    ax.errorbar(group["param_n_iterations"].astype(int), group["mean_test_score"],
                yerr=group["std_test_score"], marker="o", capsize=3,
                label=f"latent_dim={latent}")
ax.set(xlabel="refinement steps L (n_iterations)", ylabel="cross-validated R²",
       xticks=[1, 3])
ax.legend()
fig.tight_layout()
