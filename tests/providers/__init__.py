"""Tests of the providers, by family, as server/modelwire/providers/ lays them out."""
