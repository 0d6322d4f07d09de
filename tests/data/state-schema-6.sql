-- A real state file written by packsync at d7c0a75 (schema 6, the last release on plain sqlite3), as SQL.
-- How it was made: with that commit's code, tests/conftest.py's Env around a Sandbox (root folder
-- /tmp/packsync-state-6): a mapping "brand" (sidecars = "xmp") into a pack made in the web app, with
-- photo-0..3.png, copy-of-0.png (photo-0's bytes) and an empty empty.png; a mapping "logos" into a pack
-- by name (created); `packsync run` (waits for the AI metadata); `packsync pull genviral:<Other> pulled`
-- of a third pack of 3 images added in the web app; `packsync daemon` started and stopped (its row).
-- Then Python's sqlite3 `Connection.iterdump()`, less its `INSERT INTO "image_text"` lines: iterdump
-- dumps an FTS5 external-content table as its content, and those rows are the images' own (the index
-- itself is in the image_text_* tables). Load it with `executescript` on a connection of its own,
-- then open the file anew: the virtual table is written into sqlite_master under writable_schema.
-- Folder paths start with /tmp/packsync-state-6; tests replace that with a folder of their own.
BEGIN TRANSACTION;
CREATE TABLE blobs (sha256 VARCHAR NOT NULL PRIMARY KEY, content_type VARCHAR NOT NULL, url VARCHAR, upload_url VARCHAR,
        expires_at FLOAT, uploaded BOOLEAN NOT NULL);
INSERT INTO "blobs" VALUES('416598c1623f6024a90dbf939ae167b3adde2e665d2696d59ea5a9c13c98dc63','image/png','http://127.0.0.1:40941/cdn/a9fed55ddcc54d81a1c1bdf10b4a8d23.png',NULL,NULL,1);
INSERT INTO "blobs" VALUES('fd2669f04f187e4c27f3e5850f50d2639566f39fa246666815b67d1b777fa40e','image/png','http://127.0.0.1:40941/cdn/1c947770d67841278691948b7e6e9769.png',NULL,NULL,1);
INSERT INTO "blobs" VALUES('3c5554afee64c4f5866f3341cfc0c9fd07ea01ad73ddcd99524d39e9ca5815e5','image/png','http://127.0.0.1:40941/cdn/bdc17b39e53f45259e284d33c94b208a.png',NULL,NULL,1);
INSERT INTO "blobs" VALUES('40a81b1f42cdc3f9311526bc025c50f306ea6decd1e11349ad71cc7fa39052d2','image/png','http://127.0.0.1:40941/cdn/15c9ba81ecfd46519fe8479d5778bdeb.png',NULL,NULL,1);
INSERT INTO "blobs" VALUES('bedb75c4caf1d9c0db7e1f86797e35da5af2c44634ac0757b32f985fd64e25ad','image/png','http://127.0.0.1:40941/cdn/107213e9d8694fc191169e007009cd1c.png',NULL,NULL,1);
CREATE TABLE changes (id INTEGER NOT NULL PRIMARY KEY, count INTEGER NOT NULL);
INSERT INTO "changes" VALUES(0,23);
CREATE TABLE daemon (id INTEGER NOT NULL PRIMARY KEY, pid INTEGER, started_at FLOAT, last_full_scan FLOAT,
        queue INTEGER NOT NULL, state VARCHAR NOT NULL, last_error VARCHAR, updated_at FLOAT);
INSERT INTO "daemon" VALUES(1,NULL,1.79657668857867217062e+09,1.79657668864898705483e+09,0,'stopped',NULL,1.79657669017250704764e+09);
CREATE TABLE files (root VARCHAR NOT NULL, rel_path VARCHAR NOT NULL, dev INTEGER NOT NULL, inode INTEGER NOT NULL,
        size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, sha256 VARCHAR, content_type VARCHAR, problem VARCHAR,
        PRIMARY KEY (root, rel_path));
INSERT INTO "files" VALUES('/tmp/packsync-state-6/logos','logo.png',65024,2310365,74,1796576686412744053,'3c5554afee64c4f5866f3341cfc0c9fd07ea01ad73ddcd99524d39e9ca5815e5','image/png',NULL);
INSERT INTO "files" VALUES('/tmp/packsync-state-6/brand','copy-of-0.png',65024,2310362,74,1796576686411975434,'416598c1623f6024a90dbf939ae167b3adde2e665d2696d59ea5a9c13c98dc63','image/png',NULL);
INSERT INTO "files" VALUES('/tmp/packsync-state-6/brand','photo-0.png',65024,2310358,74,1796576686411833213,'416598c1623f6024a90dbf939ae167b3adde2e665d2696d59ea5a9c13c98dc63','image/png',NULL);
INSERT INTO "files" VALUES('/tmp/packsync-state-6/brand','empty.png',65024,2310363,0,1796576686411975434,'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',NULL,'empty file');
INSERT INTO "files" VALUES('/tmp/packsync-state-6/brand','photo-1.png',65024,2310359,74,1796576686411880980,'bedb75c4caf1d9c0db7e1f86797e35da5af2c44634ac0757b32f985fd64e25ad','image/png',NULL);
INSERT INTO "files" VALUES('/tmp/packsync-state-6/brand','photo-3.png',65024,2310361,74,1796576686411947642,'40a81b1f42cdc3f9311526bc025c50f306ea6decd1e11349ad71cc7fa39052d2','image/png',NULL);
INSERT INTO "files" VALUES('/tmp/packsync-state-6/brand','photo-2.png',65024,2310360,74,1796576686411917515,'fd2669f04f187e4c27f3e5850f50d2639566f39fa246666815b67d1b777fa40e','image/png',NULL);
PRAGMA writable_schema=ON;
INSERT INTO sqlite_master(type,name,tbl_name,rootpage,sql)VALUES('table','image_text','image_text',0,'CREATE VIRTUAL TABLE image_text USING fts5(file_name, description, keywords, content=''images'', content_rowid=''rowid'')');
CREATE TABLE 'image_text_config'(k PRIMARY KEY, v) WITHOUT ROWID;
INSERT INTO "image_text_config" VALUES('version',4);
CREATE TABLE 'image_text_data'(id INTEGER PRIMARY KEY, block BLOB);
INSERT INTO "image_text_data" VALUES(1,X'050F1E14');
INSERT INTO "image_text_data" VALUES(10,X'00000000010A0A000A0101010201010301010401010501010601010701010801010901010A0101');
INSERT INTO "image_text_data" VALUES(137438953473,X'000000220230300102040104636F707901020201026F660102030103706E6701020504060907');
INSERT INTO "image_text_data" VALUES(274877906945,X'0000001505306C6F676F0202020103706E670202030409');
INSERT INTO "image_text_data" VALUES(412316860417,X'0000001B023032030203010570686F746F03020202026E6703020404060A');
INSERT INTO "image_text_data" VALUES(549755813889,X'0000001B023033040203010570686F746F04020202026E6704020404060A');
INSERT INTO "image_text_data" VALUES(687194767361,X'0000001B023031050203010570686F746F05020202026E6705020404060A');
INSERT INTO "image_text_data" VALUES(824633720833,X'0000005B02303802080101030302027838020601020501016102060101020105696D616765020601010701046C6F676F0203020103706E67020F030101060102020103726564020C01010501020301067371756172650206010204040909080C090E0D');
INSERT INTO "image_text_data" VALUES(962072674305,X'0000006402303304030301013804080101030302027838040601020501016104060101020105696D616765040601010701066F72616E6765040C010105010203010570686F746F04030202026E67040F040101060102020106737175617265040601020404060909080C100A0D');
INSERT INTO "image_text_data" VALUES(1099511627777,X'0000006902303001030401013801080101030302027838010601020501016101060101020104636F7079010302010467726579010C0101050102030105696D616765010601010701026F660103030103706E67010F05010106010202010673717561726501060102040406090908090E0C070E');
INSERT INTO "image_text_data" VALUES(1236950581249,X'0000006302303105030301013805080101030302027838050601020501016105060101020105696D6167650506010107010570686F746F05030202026E67050F040101060102020106737175617265050601020401057768697465050C01010501020304060909080C0A0D0D');
INSERT INTO "image_text_data" VALUES(1374389534721,X'0000006102303203030301013803080101030302027838030601020501016103060101020105696D6167650306010107010570686F746F03030202026E67030F040101060102020103726564030C0101050102030106737175617265030601020404060909080C0A0D0D');
CREATE TABLE 'image_text_docsize'(id INTEGER PRIMARY KEY, sz BLOB);
INSERT INTO "image_text_docsize" VALUES(1,X'040604');
INSERT INTO "image_text_docsize" VALUES(2,X'020604');
INSERT INTO "image_text_docsize" VALUES(3,X'030604');
INSERT INTO "image_text_docsize" VALUES(4,X'030604');
INSERT INTO "image_text_docsize" VALUES(5,X'030604');
CREATE TABLE 'image_text_idx'(segid, term, pgno, PRIMARY KEY(segid, term)) WITHOUT ROWID;
INSERT INTO "image_text_idx" VALUES(1,X'',2);
INSERT INTO "image_text_idx" VALUES(2,X'',2);
INSERT INTO "image_text_idx" VALUES(3,X'',2);
INSERT INTO "image_text_idx" VALUES(4,X'',2);
INSERT INTO "image_text_idx" VALUES(5,X'',2);
INSERT INTO "image_text_idx" VALUES(6,X'',2);
INSERT INTO "image_text_idx" VALUES(7,X'',2);
INSERT INTO "image_text_idx" VALUES(8,X'',2);
INSERT INTO "image_text_idx" VALUES(9,X'',2);
INSERT INTO "image_text_idx" VALUES(10,X'',2);
CREATE TABLE images (pack_id VARCHAR NOT NULL, image_id VARCHAR NOT NULL, sha256 VARCHAR NOT NULL, url VARCHAR NOT NULL,
        file_name VARCHAR NOT NULL, meta_status VARCHAR NOT NULL, description VARCHAR, keywords VARCHAR NOT NULL,
        meta_error VARCHAR, added_at FLOAT NOT NULL, owner VARCHAR NOT NULL, meta_model VARCHAR,
        PRIMARY KEY (pack_id, image_id));
INSERT INTO "images" VALUES('7d548e66-59ca-4eba-8311-76c101e8fc1b','e40b79e4-35ca-49b5-b1ac-ee1d665eb219','416598c1623f6024a90dbf939ae167b3adde2e665d2696d59ea5a9c13c98dc63','http://127.0.0.1:40941/cdn/a9fed55ddcc54d81a1c1bdf10b4a8d23.png','copy-of-0.png','completed','A 8×8 grey PNG image.','["png", "grey", "square", "8x8"]',NULL,1.79657668687177371979e+09,'/tmp/packsync-state-6/brand','gpt-4.1-nano');
INSERT INTO "images" VALUES('4686a9cc-57d5-423b-a349-2209d22ac5f0','4598fe86-d38b-41f4-b5f2-dd710b661943','3c5554afee64c4f5866f3341cfc0c9fd07ea01ad73ddcd99524d39e9ca5815e5','http://127.0.0.1:40941/cdn/bdc17b39e53f45259e284d33c94b208a.png','logo.png','completed','A 8×8 red PNG image.','["png", "red", "square", "8x8"]',NULL,1.79657668687282180784e+09,'/tmp/packsync-state-6/logos','gpt-4.1-nano');
INSERT INTO "images" VALUES('7d548e66-59ca-4eba-8311-76c101e8fc1b','ca070d65-094c-4b5b-b24b-87c39ff5a5bd','fd2669f04f187e4c27f3e5850f50d2639566f39fa246666815b67d1b777fa40e','http://127.0.0.1:40941/cdn/1c947770d67841278691948b7e6e9769.png','photo-2.png','completed','A 8×8 red PNG image.','["png", "red", "square", "8x8"]',NULL,1.79657668687287449833e+09,'/tmp/packsync-state-6/brand','gpt-4.1-nano');
INSERT INTO "images" VALUES('7d548e66-59ca-4eba-8311-76c101e8fc1b','f2d26520-ad75-49b8-a67c-1266c7c91b72','40a81b1f42cdc3f9311526bc025c50f306ea6decd1e11349ad71cc7fa39052d2','http://127.0.0.1:40941/cdn/15c9ba81ecfd46519fe8479d5778bdeb.png','photo-3.png','completed','A 8×8 orange PNG image.','["png", "orange", "square", "8x8"]',NULL,1.79657668687816286087e+09,'/tmp/packsync-state-6/brand','gpt-4.1-nano');
INSERT INTO "images" VALUES('7d548e66-59ca-4eba-8311-76c101e8fc1b','f2842c71-5fd4-4fe0-a864-a8ed540a016e','bedb75c4caf1d9c0db7e1f86797e35da5af2c44634ac0757b32f985fd64e25ad','http://127.0.0.1:40941/cdn/107213e9d8694fc191169e007009cd1c.png','photo-1.png','completed','A 8×8 white PNG image.','["png", "white", "square", "8x8"]',NULL,1.79657668687821388243e+09,'/tmp/packsync-state-6/brand','gpt-4.1-nano');
CREATE TABLE mappings (root VARCHAR NOT NULL PRIMARY KEY, pack_id VARCHAR, pack_name VARCHAR, synced_at FLOAT,
        last_error VARCHAR, source_name VARCHAR, ok_at FLOAT, safety VARCHAR, withheld VARCHAR);
INSERT INTO "mappings" VALUES('/tmp/packsync-state-6/brand','7d548e66-59ca-4eba-8311-76c101e8fc1b','Brand',1.79657668864878153802e+09,NULL,NULL,1.79657668864878153802e+09,NULL,NULL);
INSERT INTO "mappings" VALUES('/tmp/packsync-state-6/logos','4686a9cc-57d5-423b-a349-2209d22ac5f0','Logos',1.79657668864886736867e+09,NULL,NULL,1.79657668864886736867e+09,NULL,NULL);
CREATE TABLE meta (key VARCHAR NOT NULL PRIMARY KEY, value VARCHAR NOT NULL);
INSERT INTO "meta" VALUES('app','packsync');
INSERT INTO "meta" VALUES('schema','6');
CREATE TABLE problems (root VARCHAR NOT NULL, rel_path VARCHAR NOT NULL, reason VARCHAR NOT NULL,
        notice BOOLEAN NOT NULL, PRIMARY KEY (root, rel_path));
INSERT INTO "problems" VALUES('/tmp/packsync-state-6/brand','empty.png','empty file',0);
CREATE TABLE pulled (folder VARCHAR NOT NULL, pack_id VARCHAR NOT NULL, image_id VARCHAR NOT NULL, name VARCHAR NOT NULL,
        url VARCHAR NOT NULL, sha256 VARCHAR NOT NULL, PRIMARY KEY (folder, pack_id, image_id));
INSERT INTO "pulled" VALUES('/tmp/packsync-state-6/pulled','b5eb8cbc-0d9b-4fd9-b270-5fe79ce81702','a323cc4f-76d3-4bad-a1d6-4342975ac162','dc9bf649f89f455bbc941743ef179457.png','http://127.0.0.1:40941/cdn/dc9bf649f89f455bbc941743ef179457.png','be376cd4ca20778c8ab481a547604532b3c99f68bb77bf312fdb5daa3e22c534');
INSERT INTO "pulled" VALUES('/tmp/packsync-state-6/pulled','b5eb8cbc-0d9b-4fd9-b270-5fe79ce81702','1fa1d7b5-36d6-48e2-a22a-0d6b5bff011a','8267a09bd2a5489baa8749d5241163d3.png','http://127.0.0.1:40941/cdn/8267a09bd2a5489baa8749d5241163d3.png','6b2ddc04f4f9b6055392797fbebd2ef8ba25b6c0a76117c00187bc106d7e1986');
INSERT INTO "pulled" VALUES('/tmp/packsync-state-6/pulled','b5eb8cbc-0d9b-4fd9-b270-5fe79ce81702','4d3ff06b-8336-4966-9588-1b98c3ac72b7','f61fca652d14441db34c1a45f830d99b.png','http://127.0.0.1:40941/cdn/f61fca652d14441db34c1a45f830d99b.png','5108d667dad6531d91be514a2dbf8c88ba17b08bcbdf4608b1e0859faffe2249');
CREATE TABLE settled (root VARCHAR NOT NULL PRIMARY KEY, fingerprint VARCHAR NOT NULL);
INSERT INTO "settled" VALUES('/tmp/packsync-state-6/brand','145739aa0a9b879dc3745f4419976944');
INSERT INTO "settled" VALUES('/tmp/packsync-state-6/logos','f805a98296521eac49e6089c0cb8b745');
CREATE TABLE sidecars (root VARCHAR NOT NULL, rel_path VARCHAR NOT NULL, digest VARCHAR NOT NULL, size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL, PRIMARY KEY (root, rel_path));
INSERT INTO "sidecars" VALUES('/tmp/packsync-state-6/brand','copy-of-0.png','56323552decf32e4e7b78e1d1bffb050',923,1796576687902913193);
INSERT INTO "sidecars" VALUES('/tmp/packsync-state-6/brand','photo-0.png','56323552decf32e4e7b78e1d1bffb050',923,1796576687903827314);
INSERT INTO "sidecars" VALUES('/tmp/packsync-state-6/brand','photo-1.png','80909648f69a9470f5c96f4a889dac16',927,1796576687904441163);
INSERT INTO "sidecars" VALUES('/tmp/packsync-state-6/brand','photo-2.png','61b55984ceabc7debf843adad62593d3',919,1796576687907556044);
INSERT INTO "sidecars" VALUES('/tmp/packsync-state-6/brand','photo-3.png','43f88193c3bc387f9179032f58ea7945',931,1796576687908046444);
CREATE TABLE url_contents (url VARCHAR NOT NULL PRIMARY KEY, sha256 VARCHAR, size INTEGER NOT NULL,
        content_type VARCHAR, problem VARCHAR);
INSERT INTO "url_contents" VALUES('http://127.0.0.1:40941/cdn/dc9bf649f89f455bbc941743ef179457.png','be376cd4ca20778c8ab481a547604532b3c99f68bb77bf312fdb5daa3e22c534',76,'image/png',NULL);
INSERT INTO "url_contents" VALUES('http://127.0.0.1:40941/cdn/8267a09bd2a5489baa8749d5241163d3.png','6b2ddc04f4f9b6055392797fbebd2ef8ba25b6c0a76117c00187bc106d7e1986',76,'image/png',NULL);
INSERT INTO "url_contents" VALUES('http://127.0.0.1:40941/cdn/f61fca652d14441db34c1a45f830d99b.png','5108d667dad6531d91be514a2dbf8c88ba17b08bcbdf4608b1e0859faffe2249',76,'image/png',NULL);
CREATE INDEX ix_blobs_url ON blobs (url);
CREATE INDEX ix_images_sha256 ON images (sha256);
CREATE INDEX ix_images_pack_sha256 ON images (pack_id, sha256);
CREATE INDEX ix_url_contents_sha256 ON url_contents (sha256);
CREATE TRIGGER image_text_insert AFTER INSERT ON images BEGIN INSERT INTO image_text(rowid, file_name, description, keywords) VALUES (new.rowid, new.file_name, new.description, new.keywords); END;
CREATE TRIGGER image_text_delete AFTER DELETE ON images BEGIN INSERT INTO image_text(image_text, rowid, file_name, description, keywords) VALUES ('delete', old.rowid, old.file_name, old.description, old.keywords); END;
CREATE TRIGGER image_text_update AFTER UPDATE ON images BEGIN INSERT INTO image_text(image_text, rowid, file_name, description, keywords) VALUES ('delete', old.rowid, old.file_name, old.description, old.keywords); INSERT INTO image_text(rowid, file_name, description, keywords) VALUES (new.rowid, new.file_name, new.description, new.keywords); END;
CREATE TRIGGER images_insert_counted AFTER INSERT ON images BEGIN UPDATE changes SET count = count + 1 WHERE id = 0; END;
CREATE TRIGGER images_update_counted AFTER UPDATE ON images BEGIN UPDATE changes SET count = count + 1 WHERE id = 0; END;
CREATE TRIGGER images_delete_counted AFTER DELETE ON images BEGIN UPDATE changes SET count = count + 1 WHERE id = 0; END;
CREATE TRIGGER blobs_insert_counted AFTER INSERT ON blobs BEGIN UPDATE changes SET count = count + 1 WHERE id = 0; END;
CREATE TRIGGER blobs_update_counted AFTER UPDATE ON blobs BEGIN UPDATE changes SET count = count + 1 WHERE id = 0; END;
CREATE TRIGGER blobs_delete_counted AFTER DELETE ON blobs BEGIN UPDATE changes SET count = count + 1 WHERE id = 0; END;
CREATE TRIGGER url_contents_insert_counted AFTER INSERT ON url_contents BEGIN UPDATE changes SET count = count + 1 WHERE id = 0; END;
CREATE TRIGGER url_contents_update_counted AFTER UPDATE ON url_contents BEGIN UPDATE changes SET count = count + 1 WHERE id = 0; END;
CREATE TRIGGER url_contents_delete_counted AFTER DELETE ON url_contents BEGIN UPDATE changes SET count = count + 1 WHERE id = 0; END;
PRAGMA writable_schema=OFF;
COMMIT;
