"""What the tests share: processes on loopback, clients, worlds, Redis and PostgreSQL helpers. No test module
imports another test module; they all import from here."""
