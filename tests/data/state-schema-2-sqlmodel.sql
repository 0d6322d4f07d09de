-- The schema packsync's state had while it was built on sqlmodel (schema 2), as SQLite kept it.
-- tests/test_safety.py checks that a state file made with it is used as it is.
CREATE TABLE meta (
	"key" VARCHAR NOT NULL, 
	value VARCHAR NOT NULL, 
	PRIMARY KEY ("key")
);
CREATE TABLE files (
	root VARCHAR NOT NULL, 
	rel_path VARCHAR NOT NULL, 
	dev INTEGER NOT NULL, 
	inode INTEGER NOT NULL, 
	size INTEGER NOT NULL, 
	mtime_ns INTEGER NOT NULL, 
	sha256 VARCHAR, 
	content_type VARCHAR, 
	problem VARCHAR, 
	PRIMARY KEY (root, rel_path)
);
CREATE TABLE problems (
	root VARCHAR NOT NULL, 
	rel_path VARCHAR NOT NULL, 
	reason VARCHAR NOT NULL, 
	notice BOOLEAN NOT NULL, 
	PRIMARY KEY (root, rel_path)
);
CREATE TABLE blobs (
	sha256 VARCHAR NOT NULL, 
	content_type VARCHAR NOT NULL, 
	url VARCHAR, 
	upload_url VARCHAR, 
	expires_at FLOAT, 
	uploaded BOOLEAN NOT NULL, 
	PRIMARY KEY (sha256)
);
CREATE INDEX ix_blobs_url ON blobs (url);
CREATE TABLE images (
	pack_id VARCHAR NOT NULL, 
	image_id VARCHAR NOT NULL, 
	sha256 VARCHAR NOT NULL, 
	url VARCHAR NOT NULL, 
	file_name VARCHAR NOT NULL, 
	meta_status VARCHAR NOT NULL, 
	description VARCHAR, 
	keywords VARCHAR NOT NULL, 
	meta_error VARCHAR, 
	added_at FLOAT NOT NULL, 
	owner VARCHAR NOT NULL, 
	PRIMARY KEY (pack_id, image_id)
);
CREATE INDEX ix_images_sha256 ON images (sha256);
CREATE TABLE url_contents (
	url VARCHAR NOT NULL, 
	sha256 VARCHAR, 
	size INTEGER NOT NULL, 
	content_type VARCHAR, 
	problem VARCHAR, 
	PRIMARY KEY (url)
);
CREATE INDEX ix_url_contents_sha256 ON url_contents (sha256);
CREATE TABLE pulled (
	folder VARCHAR NOT NULL, 
	pack_id VARCHAR NOT NULL, 
	image_id VARCHAR NOT NULL, 
	name VARCHAR NOT NULL, 
	url VARCHAR NOT NULL, 
	sha256 VARCHAR NOT NULL, 
	PRIMARY KEY (folder, pack_id, image_id)
);
CREATE TABLE mappings (
	root VARCHAR NOT NULL, 
	pack_id VARCHAR, 
	pack_name VARCHAR, 
	synced_at FLOAT, 
	last_error VARCHAR, 
	PRIMARY KEY (root)
);
CREATE TABLE daemon (
	id INTEGER NOT NULL, 
	pid INTEGER, 
	started_at FLOAT, 
	last_full_scan FLOAT, 
	queue INTEGER NOT NULL, 
	state VARCHAR NOT NULL, 
	last_error VARCHAR, 
	updated_at FLOAT, 
	PRIMARY KEY (id)
);
