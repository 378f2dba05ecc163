"""AWS Payment Cryptography: the service model, the wire format and signing, shared by the region
backend (client side), the emulator (server side) and the API codec (request validation)."""
