"""The runtime layer: how this process runs, owned in one place.

    errors       the error types the CLI maps to exit codes (one line each)
    fileio       atomic file writes, run-folder-safe JSON
    device       `Runtime`: device, autocast dtype, channels_last, pin_memory, cudnn flags
    seeding      seeds, per-epoch seeds, RNG state for exact resume
    signals      Ctrl-C / SIGTERM: deferred stops, `Interrupted`, DataLoader-worker handlers
    distributed  process-group helpers (rank, world size, is_main, all_reduce)

Imports nothing from the rest of seg_pet: every other layer may import it.
"""
