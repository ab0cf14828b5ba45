"""One-off studies: each answers one question and writes its own results.

Unlike ``python -m benchmarks.run`` (the main comparison of every method on
every task), a study measures one property of the package and
writes ``benchmarks/results/<name>.{json,md}``:

- ``defaults``: training settings of the head, as an ablation;
- ``layers``: a ridge on every hidden layer's pooled states, per task;
- ``learning_curve``: RELISH (default, cross-fitted, layer choices) against
  the ridges on its states, by training rows;
- ``calibration``: coverage of the prediction intervals;
- ``gate``: how the head's weight in the stack is judged;
- ``lora_batching``: LoRA training on length-grouped batches;
- ``extraction``: token-state extraction throughput against padded loops, by
  batching (texts or a token budget) and attention (SDPA or eager);
- ``extraction_versions``: extraction throughput of this checkout against another;
- ``grid_search_cache``: a grid search pays the backbone once per text;
- ``memory``: bytes per cached token; memory of a streaming predict;
- ``storage``: RELISH's accuracy on token states stored in int8, against float16;
- ``gpu``: extraction and head fits on a CUDA GPU against the CPU;
- ``head_speed``: the head's factored attention against the direct one;
- ``truncation``: cutting text fields against cutting a prompt's end;
- ``scaling``: a grid search and an extraction on a Dask cluster;
- ``tabular``: RELISH inside a tabular pipeline (text plus numbers).

Each runs as ``python -m benchmarks.studies.<name> [--help]``.
"""
