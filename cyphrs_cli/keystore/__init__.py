"""Key stores: where CA private keys live (encrypted files or PKCS#11 tokens), by URI."""
