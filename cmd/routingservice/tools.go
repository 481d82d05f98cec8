package main

import (
	"errors"
	"io"
)

func dlq(args []string, stdout, stderr io.Writer) error { return errors.New("dlq: not available yet") }
