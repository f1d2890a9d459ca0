"""The recsynth KFP pipeline: its definition, the local runner, compile and submit."""
