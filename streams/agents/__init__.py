"""Thin Faust agents: decode, call the policy, encode, produce."""
