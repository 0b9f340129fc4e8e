"""Assembly: configuration, clients, server, command line."""
