"""The driftline subcommands: each module registers its parser and runs its command.

Imports of heavy libraries (torch, onnxruntime) stay inside the command functions, so
`driftline --help` is instant and the light services image never needs torch.
"""
