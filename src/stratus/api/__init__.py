"""HTTP front ends. They translate; the rules live in `stratus.service`."""
