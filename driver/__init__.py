"""tessera.driver"""
