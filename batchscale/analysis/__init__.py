"""Why scaling breaks: loss landscape and Hessian sharpness of finished runs."""
