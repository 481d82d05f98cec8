package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// DataDirName is the data dir's name beside the config file when the file
// leaves data_dir empty.
const DataDirName = "data"

// UserDataDir is the data dir of a service started without a config
// file and without data_dir: $XDG_DATA_HOME/routingservice, else
// ~/.local/share/routingservice. It does not depend on the directory the
// command runs from, so the generated JWT secret and the store stay the
// same wherever the service is started. getenv is os.Getenv in the
// service; without a home directory it falls back to ./data.
func UserDataDir(getenv func(string) string) string {
	if x := getenv("XDG_DATA_HOME"); x != "" && filepath.IsAbs(x) {
		return filepath.Join(x, "routingservice")
	}
	home := getenv("HOME")
	if home == "" {
		home, _ = os.UserHomeDir()
	}
	if home == "" {
		abs, err := filepath.Abs(DataDirName)
		if err != nil {
			return DataDirName
		}
		return abs
	}
	return filepath.Join(home, ".local", "share", "routingservice")
}

// ParseFile reads the config file at path over cfg (see Parse). A
// relative data_dir (the default ./data included) is taken relative to
// the file's directory, and an empty one is the directory "data" beside
// the file, so the data dir does not depend on where the command runs
// from.
func ParseFile(path string, cfg *Config) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := Parse(b, cfg); err != nil {
		return err
	}
	dir, err := filepath.Abs(filepath.Dir(path))
	if err != nil {
		return err
	}
	switch {
	case cfg.DataDir == "":
		cfg.DataDir = filepath.Join(dir, DataDirName)
	case !filepath.IsAbs(cfg.DataDir):
		cfg.DataDir = filepath.Join(dir, cfg.DataDir)
	}
	return nil
}

// ReadFile reads the config file at path over c (ParseFile), naming the
// file in its error; with no file (path ""), the data dir is left to
// FillDefaults: the per-user directory unless ROUTING_DATA_DIR names one.
func (c *Config) ReadFile(path string) error {
	if path == "" {
		c.DataDir = ""
		return nil
	}
	if err := ParseFile(path, c); err != nil {
		return FileError(path, err)
	}
	return nil
}

// fillDataDir gives the data dir its default when no file or variable set
// it (UserDataDir), and makes a relative one (ROUTING_DATA_DIR=data, taken
// from the working directory) absolute, so the log says where it is.
func (c *Config) fillDataDir(getenv func(string) string) {
	if c.DataDir == "" {
		c.DataDir = UserDataDir(getenv)
	}
	if !filepath.IsAbs(c.DataDir) {
		if abs, err := filepath.Abs(c.DataDir); err == nil {
			c.DataDir = abs
		}
	}
}

// FileError is the error of a config file that cannot be read or parsed,
// naming the file.
func FileError(path string, err error) error {
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) {
		return fmt.Errorf("config: %w", err)
	}
	return fmt.Errorf("config %s: %w", path, err)
}
