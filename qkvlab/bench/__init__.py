"""`qkvlab bench`: what a variant costs to train and to serve, measured."""
