"""What both applications share. Imported before TensorFlow by every entry point, it keeps
TensorFlow's start-up lines off the terminal first (`shared.terminal`)."""

from shared import terminal

terminal.quiet_tensorflow()
