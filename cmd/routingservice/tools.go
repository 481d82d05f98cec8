package main

import (
	"errors"
	"io"
)

func vapid(args []string, stdout io.Writer) error { return errors.New("vapid: not available yet") }

func dlq(args []string, stdout, stderr io.Writer) error { return errors.New("dlq: not available yet") }
