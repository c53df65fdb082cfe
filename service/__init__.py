"""usgi-docs: documentation service for ultrasound-guided injections."""
