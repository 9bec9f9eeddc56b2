"""porover_lib: the helper library behind the POROver reproduction notebooks.

One module, one concern: `config` (typed params), `cli` and `checks` (`porover`, `porover check`), `models` (loading),
`prompts` (prompt sources and splits), `backends` and `generation` (generation backends, overgeneration),
`judges`, `selection` (rejection sampling), `derta` (DeRTa examples), `training` (SFT, DPO-family),
`training_log`, `preference` (POROver pairs), `stages` (the glue each notebook calls), `metrics`,
`plots` and `figures`, `memory` (GPU memory estimates), `tuning` (the validation split), `notebook`, `io`.
Importable without a GPU.
"""
__version__ = "0.1.0"
