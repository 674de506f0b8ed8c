# Before any module of this package imports TensorFlow: keep its start-up lines off the
# terminal (`shared.terminal`; GLIMPSE_VERBOSE=1 shows them).
from shared import terminal

terminal.quiet_tensorflow()
