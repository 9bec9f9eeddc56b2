"""porover_lib: the helper library behind the POROver reproduction notebooks.

One module, one concern: `config` (typed params), `models` (loading), `prompts` (prompt sources),
`generation` (backends and overgeneration), `judges`, `selection` (rejection sampling),
`training` (SFT/DeRTa, DPO-family), `preference` (POROver pairs), `metrics`, `plots`.
Importable without a GPU.
"""
__version__ = "0.1.0"
