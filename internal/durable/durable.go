// Package durable holds the file-system steps that make a change survive a
// power loss: fsync of a directory after an entry in it changed, and a
// removal that is on disk when it returns.
package durable

import (
	"errors"
	"os"
	"path/filepath"
)

// SyncDir fsyncs a directory, making the creation, rename or removal of
// its entries durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// Remove removes path and fsyncs its directory. A path that does not
// exist is not an error.
func Remove(path string) error {
	err := os.Remove(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return SyncDir(filepath.Dir(path))
}
