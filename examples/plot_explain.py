"""
What the latent reads
=====================

At every refinement step the latent state attends over the prompt's token
states. :meth:`~sklearn_relish.RelishRegressor.explain` returns those
attention weights next to the decoded tokens, for a few rows. Attention
shows where the head looked, not why the number is what it is.
"""

# %%
import matplotlib.pyplot as plt

from sklearn_relish import RelishRegressor
from sklearn_relish.datasets import load_vader_tweets

X, y = load_vader_tweets(return_X_y=True)
reg = RelishRegressor(random_state=0).fit(X[:500], y[:500])

texts = ["What a wonderful, happy day with my friends!",
         "This is the worst service I have ever had. Never again."]
explanations = reg.explain(texts)
for text, e in zip(texts, explanations):
    print(f"{text!r}: {e.staged_predictions[-1]:+.2f}")
    print("   most read at the last step:",
          [(token, round(weight, 3)) for _, token, weight in e.top_tokens(5)])
print("the head's weight in the prediction:", explanations[0].head_weight)

# %%
# Steps down, tokens across; the labels give each step's prediction.
fig, axes = plt.subplots(2, 1, figsize=(10, 5))
for ax, e in zip(axes, explanations):
    e.plot(ax=ax)
fig.tight_layout()
