"""
Text pairs: which of two tweets is more positive, and by how much
=================================================================

Several text fields per row come as an ``(n, 2)`` array, a list of pairs or
a two-column DataFrame; a ``prompt_template`` writes each row into one
prompt. Here the target of a pair of tweets is the difference of their
sentiment ratings, a comparison only the two texts together can answer.
"""

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy.stats import pearsonr
from sklearn.model_selection import train_test_split

from sklearn_relish import RelishRegressor
from sklearn_relish.datasets import load_vader_tweets

X, y = load_vader_tweets(return_X_y=True)
rng = np.random.default_rng(0)
first, second = rng.permutation(500), rng.permutation(500)
pairs = pd.DataFrame({"first": X[first], "second": X[second]})
target = y[first] - y[second]
P_train, P_test, d_train, d_test = train_test_split(pairs, target, test_size=200,
                                                    random_state=0)

# %%
# The template names the DataFrame's columns; only those are read.
reg = RelishRegressor(
    prompt_template=("How much more positive is the first tweet than the second?\n"
                     "First: {first}\nSecond: {second}\nDifference:"),
    random_state=0,
).fit(P_train, d_train)
pred = reg.predict(P_test)
print(f"Pearson {pearsonr(pred, d_test)[0]:.3f}")
print(reg.prompt_template_.format(**P_test.iloc[0]))

# %%
fig, ax = plt.subplots(figsize=(4.5, 4.5))
ax.scatter(d_test, pred, s=10, alpha=0.7)
ax.plot([-8, 8], [-8, 8], color="grey", lw=1)
ax.set(xlabel="true difference", ylabel="predicted difference")
fig.tight_layout()
