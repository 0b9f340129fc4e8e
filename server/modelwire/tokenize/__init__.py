"""Token counting that never touches the network."""
